-- What `probex run` ends with: one row per tree. Test accuracy by the tree's headline metric
-- (top-1 when each model has one class, else per-class accuracy) for ProbeX and its
-- baselines, with the majority-guess chance; zero-shot ranking AUC on test and held-out
-- classes; the expected calibration error of ProbeX's probabilities; why a tree has no expert.
WITH head AS (
    SELECT tree_id,
           CASE WHEN bool_or(metric = 'top1') THEN 'top1' ELSE 'per_class_accuracy' END AS metric
    FROM evaluations WHERE split = 'test' GROUP BY tree_id
),
acc AS (
    SELECT e.tree_id, h.metric,
           max(e.value) FILTER (WHERE e.method = 'probex') AS probex,
           max(e.value) FILTER (WHERE e.method = 'dense') AS dense,
           max(e.value) FILTER (WHERE e.method = 'statnn') AS statnn,
           max(e.chance) FILTER (WHERE e.method = 'probex') AS chance
    FROM evaluations e JOIN head h ON e.tree_id = h.tree_id AND e.metric = h.metric
    WHERE e.split = 'test'
    GROUP BY e.tree_id, h.metric
),
other AS (
    SELECT tree_id,
           max(value) FILTER (WHERE method = 'probex-zeroshot'
                              AND metric = 'zero_shot_ranking_auc') AS zero_shot_auc,
           max(value) FILTER (WHERE method = 'probex-zeroshot'
                              AND metric = 'heldout_ranking_auc') AS heldout_auc,
           max(value) FILTER (WHERE method = 'probex'
                              AND metric = 'expected_calibration_error') AS ece
    FROM evaluations GROUP BY tree_id
)
SELECT t.name AS tree, t.tree_id, t.kind, t.size, t.n_documented AS documented,
       t.expert_layer AS layer, a.metric, round(a.probex, 3) AS probex,
       round(a.dense, 3) AS dense, round(a.statnn, 3) AS statnn, round(a.chance, 3) AS chance,
       round(o.zero_shot_auc, 3) AS zero_shot_auc, round(o.heldout_auc, 3) AS heldout_auc,
       round(o.ece, 3) AS ece, coalesce(t.expert_note, '') AS note
FROM trees t
LEFT JOIN acc a USING (tree_id)
LEFT JOIN other o USING (tree_id)
ORDER BY t.size DESC, t.tree_id;
