"""WhatsApp: the persona answers on the WhatsApp Cloud API (PROTOCOL §3).

- `models`: a persona's channel (its number and secrets, encrypted at rest) and the raw
  webhook deliveries, which are also the processing queue.
- `views`: the webhook (`/v1/whatsapp/webhook`): verification, signature, store, answer 200.
- `processing`: claims stored deliveries with an expiring lease and processes them, in every
  server process, after the webhook has answered.
- `services`: sessions per contact (the 24-hour window, a `Call` of transport whatsapp), inbound
  messages and statuses, their events and transcript lines; `whatsapp_message_received` is
  where answering hooks in.
- `selectors`: channels by phone number id, verify token or signature.
- `payloads`: Meta's webhook JSON read into small typed records, item by item.
- `graph`: the Graph API client (send, mark read with typing, media download) and its errors.
- `voice_notes`: a voice note's audio decoded and transcribed with the persona's recogniser.
"""
