-- Root and depth of every repo from declared (repo_id, base_model) edges; {table} is filled
-- in by trees_from_declared_edges_sql after validating it as a plain identifier.
-- Roots: repos with no declared base, or whose base is not in the table (an external base).
-- Cycles are never reached from a root (one base per repo), so the recursion terminates; their
-- members come back with a NULL root.
WITH RECURSIVE edges AS (
    SELECT repo_id, base_model FROM {table}
),
walk(repo_id, root, depth) AS (
    SELECT e.repo_id, e.repo_id, 0
    FROM edges e
    WHERE e.base_model IS NULL
       OR e.base_model = e.repo_id
       OR NOT EXISTS (SELECT 1 FROM edges b WHERE b.repo_id = e.base_model)
    UNION ALL
    SELECT c.repo_id, w.root, w.depth + 1
    FROM edges c JOIN walk w ON c.base_model = w.repo_id
    WHERE c.base_model <> c.repo_id
)
SELECT e.repo_id, w.root, w.depth
FROM edges e LEFT JOIN walk w USING (repo_id)
