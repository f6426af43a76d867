-- What was lost, per node and reason, over a time range (loss records whose time is in
-- [from, to)): packets the kernel could not count, records dropped on the way, and gaps
-- (unit nanoseconds) during which nothing was counted.
SELECT
    node,
    reason,
    unit,
    sum(count) AS count,
    count() AS records
FROM losses
WHERE time >= {from:DateTime} AND time < {to:DateTime}
GROUP BY node, reason, unit
ORDER BY node, reason, unit
LIMIT {limit:UInt32}
