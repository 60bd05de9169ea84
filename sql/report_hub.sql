-- Hub-wide scores (tree recovery, routing, text search), one line each.
SELECT method, metric, split, round(value, 3) AS value, n
FROM evaluations WHERE tree_id = 'ALL' ORDER BY method, metric, split;
