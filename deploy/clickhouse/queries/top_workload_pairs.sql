-- Top workload pairs by bytes over a time range, from the 5-minute roll-up (flows_5m: whole
-- 5-minute buckets whose start is in [from, to)); each packet counted once, sampling scaled.
SELECT
    src_namespace,
    src_workload_kind,
    src_workload,
    dst_namespace,
    dst_workload_kind,
    dst_workload,
    sum(bytes) AS bytes,
    sum(packets) AS packets
FROM flows_5m
WHERE t >= {from:DateTime} AND t < {to:DateTime}
GROUP BY src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload
ORDER BY bytes DESC, src_namespace, src_workload, dst_namespace, dst_workload
LIMIT {limit:UInt32}
