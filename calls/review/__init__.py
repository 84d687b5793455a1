"""Call review for staff: a call read as a conversation, transcript search and export, the audit log."""
