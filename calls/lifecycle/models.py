"""A Parley server process, as the calls it holds know it."""

from __future__ import annotations

from django.db import models


class EngineProcess(models.Model):
    """One run of one server process (a Daphne worker): a restart is a new row.

    A call it holds points at it (`Call.owner`). While the process lives it heartbeats; when
    its heartbeat is stale, or its pid is gone from its own machine, its calls are ended.
    """

    id = models.CharField(primary_key=True, max_length=64)
    # The machine's name, and after a '|' the pid namespace (boot and namespace ids) whose
    # processes can check each other's pids.
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    # When the pid started (Linux clock ticks after boot): a pid reused later is not this one.
    pid_started = models.BigIntegerField(null=True, blank=True)
    # The host[:port] browsers reach it at, when known (`scripts/serve` tells each process).
    engine_host = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    draining_since = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "calls"
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["stopped_at", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid} ({self.engine_host or 'no engine host'})"
