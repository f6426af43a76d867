-- Top pod pairs by bytes over a time range (records that ended in [from, to)).
-- Each packet is counted once (counted = 1: an inter-node flow is reported by both nodes) and
-- sampled counts are scaled by sampling_rate. An end that is not a pod shows its IP address.
SELECT
    src_namespace,
    if(src_pod != '', src_pod, src_ip) AS src,
    dst_namespace,
    if(dst_pod != '', dst_pod, dst_ip) AS dst,
    sum(bytes * sampling_rate) AS bytes,
    sum(packets * sampling_rate) AS packets
FROM flows
WHERE counted = 1 AND end_time >= {from:DateTime} AND end_time < {to:DateTime}
GROUP BY src_namespace, src, dst_namespace, dst
ORDER BY bytes DESC, src_namespace, src, dst_namespace, dst
LIMIT {limit:UInt32}
