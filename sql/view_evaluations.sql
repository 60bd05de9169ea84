-- Scores per tree and method against the zoo's ground truth (tree_id 'ALL' = hub-wide).
CREATE OR REPLACE VIEW evaluations AS
SELECT tree_id, method, metric, value, chance, n, split FROM raw_evaluation_rows;
