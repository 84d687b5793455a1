"""SmartTurn v3.2, the end-of-turn model: one shared ONNX session and the analyzer built on it."""

from __future__ import annotations

import importlib.resources
import threading
from typing import Any

_SMART_TURN_MODEL = "smart-turn-v3.2-cpu.onnx"
_smart_turn_session: Any = None
_smart_turn_lock = threading.Lock()


def smart_turn_session() -> Any:
    """The process's one ONNX session of the SmartTurn v3.2 model pipecat ships (loaded once).

    A session per call cost ~60 ms of CPU and ~10 MB each; ONNX Runtime runs one session from
    several threads at once, and the model keeps no state between predictions.
    """
    global _smart_turn_session
    with _smart_turn_lock:
        if _smart_turn_session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()  # as pipecat's LocalSmartTurnAnalyzerV3 sets them
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            path = importlib.resources.files("pipecat.audio.turn.smart_turn.data").joinpath(_SMART_TURN_MODEL)
            _smart_turn_session = ort.InferenceSession(str(path), sess_options=options)
        return _smart_turn_session


def smart_turn_analyzer_build(*, stop_secs: float) -> Any:
    """pipecat's local SmartTurn v3 analyzer on the shared session (the audio it holds is the call's)."""
    from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    class SharedSessionSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
        def __init__(self, **kwargs: Any) -> None:
            BaseSmartTurn.__init__(self, **kwargs)  # not the parent's: it loads a session of its own
            self._log_data = False
            self._session = smart_turn_session()

    return SharedSessionSmartTurnAnalyzer(params=SmartTurnParams(stop_secs=stop_secs))
