SELECT tree_id, method, objective, layer, metric, round(value, 4) AS value, round(chance, 4) AS chance, n_train, n_val
FROM experts ORDER BY tree_id, objective, method, metric;
