"""WhatsApp: the webhook, the Graph API client and the session logic."""
