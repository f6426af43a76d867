-- Inter-node flows that did not go through WireGuard on a node that has it (plaintext where
-- traffic should be encrypted), over a time range. Each packet counted once, sampling scaled.
SELECT
    src_namespace,
    if(src_pod != '', src_pod, src_ip) AS src,
    dst_namespace,
    if(dst_pod != '', dst_pod, dst_ip) AS dst,
    dst_port,
    protocol,
    sum(bytes * sampling_rate) AS bytes,
    sum(packets * sampling_rate) AS packets,
    min(start_time) AS first_seen,
    max(end_time) AS last_seen
FROM flows
WHERE plaintext_inter_node = 1 AND counted = 1
    AND end_time >= {from:DateTime} AND end_time < {to:DateTime}
GROUP BY src_namespace, src, dst_namespace, dst, dst_port, protocol
ORDER BY bytes DESC, src_namespace, src, dst_namespace, dst, dst_port
LIMIT {limit:UInt32}
