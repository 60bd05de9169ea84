-- One row per crawled repo: what its card says, and what probex recovered from its weights.
CREATE OR REPLACE VIEW models AS
SELECT r.repo_id, r.kind, r.documented, r.base_model AS declared_base, r.base_model_relation,
       r.training_classes, r.split, r.withheld_classes, m.tree_id, m.parent, m.depth, m.is_root,
       rt.routed_tree, rt.distance AS route_distance, rt.reason AS route_reason,
       (d.repo_id IS NOT NULL) AS card_disagrees,
       r.signature, r.fingerprint, r.n_params, r.weights_file, r.source
FROM raw_repos r
LEFT JOIN raw_tree_members m USING (repo_id)
LEFT JOIN raw_routes rt USING (repo_id)
LEFT JOIN raw_card_disagreements d USING (repo_id);
