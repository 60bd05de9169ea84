-- One row per recovered Model Tree. Its name is its root repo (stable across runs; an absent
-- base of adapters reads "absent:<base>"); tree_id is the short id partitions and files use.
-- expert_status: trained | skipped (expert_note says why) | NULL (experts not built yet).
CREATE OR REPLACE VIEW trees AS
SELECT t.tree_id, t.root_repo AS name, t.root_repo, t.kind, t.size, t.n_documented,
       t.size - t.n_documented AS n_undocumented, s.status AS expert_status,
       s.reason AS expert_note, s.layer AS expert_layer, t.signature, t.fingerprint
FROM raw_tree_summary t
LEFT JOIN raw_expert_status s USING (tree_id);
