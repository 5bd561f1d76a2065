"""Orders: DB first, broker second. An order and its ``order.placed`` message commit
together through the transactional outbox; a worker relays and ships them once."""
