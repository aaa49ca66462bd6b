#!/usr/bin/env bash
# Create the worker's five topics (idempotent) and check the co-partitioning rule.
# Run by the one-shot `topics` service of docker-compose.yml in the apache/kafka image;
# works anywhere kafka-topics.sh is (KAFKA_TOPICS_SH overrides its path).
#   KAFKA_BOOTSTRAP          broker list                      (kafka:9092)
#   RECALL_TOPIC_PARTITIONS  partitions of every topic        (4)
#   RECALL_TOPIC_*           topic names, as for the worker   (clicks, items, ...)
#   TOPIC_REPLICATION        replication factor               (1)
# `clicks` and `recall-requests` are both keyed by user id and must have the same number of
# partitions, so that one worker owns a user's clicks and that user's requests.
set -euo pipefail
TOPICS_SH="${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
PARTITIONS="${RECALL_TOPIC_PARTITIONS:-4}"
REPLICATION="${TOPIC_REPLICATION:-1}"
CLICKS="${RECALL_TOPIC_CLICKS:-clicks}"
ITEMS="${RECALL_TOPIC_ITEMS:-items}"
REQUESTS="${RECALL_TOPIC_REQUESTS:-recall-requests}"
RESPONSES="${RECALL_TOPIC_RESPONSES:-recall-responses}"
DLQ="${RECALL_TOPIC_DLQ:-recall-dlq}"

for topic in "$CLICKS" "$ITEMS" "$REQUESTS" "$RESPONSES" "$DLQ"; do
    "$TOPICS_SH" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
done

# topics created earlier may have other counts: refuse to start on a broken pairing
count() {
    "$TOPICS_SH" --bootstrap-server "$BOOTSTRAP" --describe --topic "$1" \
        | grep -o 'PartitionCount: *[0-9]*' | grep -o '[0-9]*$'
}
n_clicks="$(count "$CLICKS")"
n_requests="$(count "$REQUESTS")"
if [ "$n_clicks" != "$n_requests" ]; then
    echo "create-topics: $CLICKS has $n_clicks partitions but $REQUESTS has $n_requests;" \
        "they must be equal (both are keyed by user id)" >&2
    exit 1
fi
echo "create-topics: $CLICKS $ITEMS $REQUESTS $RESPONSES $DLQ ready" \
    "($CLICKS/$REQUESTS: $n_clicks partitions)"
