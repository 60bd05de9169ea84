-- One row per generated model card: the model, its tree by name, what the card claims.
CREATE OR REPLACE VIEW cards AS
SELECT c.repo_id, t.root_repo AS tree, c.kind, c.status, c.base_model, c.base_model_relation,
       c.listed_classes, c.confidence_threshold, c.expert_version, c.path, c.tree_id
FROM raw_model_cards c
LEFT JOIN raw_tree_summary t USING (tree_id);
