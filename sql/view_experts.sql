-- One row per tree, method and metric of the trained experts and their baselines.
CREATE OR REPLACE VIEW experts AS
SELECT tree_id, method, objective, layer, metric, value, chance, n_train, n_val, encoder,
       checkpoint, code_version
FROM raw_expert_results;
