"""Speech recognition for the listening persona (see `providers.build_stt_service`)."""
