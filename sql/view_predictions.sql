-- Predicted training classes of every routed model, with probabilities (rank 1 = most likely).
CREATE OR REPLACE VIEW predictions AS
SELECT p.repo_id, p.tree_id, p.class_name, p.probability, p.rank, r.documented
FROM raw_predictions_long p
LEFT JOIN raw_repos r USING (repo_id);
