-- The classic alert: more than `threshold` bytes (default 1 GB) from one pod to another within 5 minutes
-- (tumbling 5-minute windows of the records' end times, in [from, to)). Each packet counted
-- once, sampling scaled.
SELECT
    toStartOfFiveMinute(end_time) AS window_start,
    src_namespace,
    src_pod,
    dst_namespace,
    dst_pod,
    sum(bytes * sampling_rate) AS bytes,
    sum(packets * sampling_rate) AS packets
FROM flows
WHERE counted = 1 AND src_pod != '' AND dst_pod != ''
    AND end_time >= {from:DateTime} AND end_time < {to:DateTime}
GROUP BY window_start, src_namespace, src_pod, dst_namespace, dst_pod
HAVING bytes > {threshold:UInt64}
ORDER BY window_start, bytes DESC, src_namespace, src_pod, dst_namespace, dst_pod
LIMIT {limit:UInt32}
