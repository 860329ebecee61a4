"""Signed webhooks: a persisted delivery queue (which is also the delivery log), the sender
with retries and exponential backoff, and the operator API that lists deliveries."""
