-- Same-node bytes per namespace pair over a time range: the pod-to-pod traffic that never leaves
-- a node and that VPC flow logs cannot see. Each packet counted once, sampling scaled.
SELECT
    src_namespace,
    dst_namespace,
    sum(bytes * sampling_rate) AS bytes,
    sum(packets * sampling_rate) AS packets
FROM flows
WHERE same_node = 1 AND counted = 1 AND end_time >= {from:DateTime} AND end_time < {to:DateTime}
GROUP BY src_namespace, dst_namespace
ORDER BY bytes DESC, src_namespace, dst_namespace
LIMIT {limit:UInt32}
