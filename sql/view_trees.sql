-- One row per recovered Model Tree.
CREATE OR REPLACE VIEW trees AS
SELECT tree_id, root_repo, kind, size, n_documented, size - n_documented AS n_undocumented,
       signature, fingerprint
FROM raw_tree_summary;
