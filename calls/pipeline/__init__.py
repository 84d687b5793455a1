"""The conversation pipeline: pipecat processors, media tracks, speech, brain and avatar (no ORM)."""
