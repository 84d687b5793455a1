"""Speech synthesis for the pipeline: offline espeak-ng (`espeak`, `tts`) and cloud providers (`providers`)."""
