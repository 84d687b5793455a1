"""The persona's animated face: drawing (`face`), motion (`animator`) and the video track (`track`)."""
