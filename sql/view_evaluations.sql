-- Scores per tree and method against the zoo's ground truth (tree_id 'ALL' = hub-wide).
-- stderr: the standard error of value where it is a mean over models or queries, else NULL.
CREATE OR REPLACE VIEW evaluations AS
SELECT tree_id, method, metric, value, chance, stderr, n, split FROM raw_evaluation_rows;
