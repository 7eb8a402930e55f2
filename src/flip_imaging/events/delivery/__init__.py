"""Tables of the Event Service: subscriptions and their delivery history."""
