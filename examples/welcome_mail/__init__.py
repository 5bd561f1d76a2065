"""The welcome-mail story: a service triggers ``user.saved``; a bridge queues a mail;
``EmailQueue`` sends it (to an outbox file) in a worker process."""
