"""The online worker (``recall worker``): a faust app whose event loop consumes clicks, items
and recall requests with aiokafka, over the recall core; plus its client, demo and benchmark."""
