-- The evaluation table `probex run` and `probex report` print: ground-truth scores.
SELECT tree_id, method, metric, split, round(value, 4) AS value, round(chance, 4) AS chance,
       round(stderr, 4) AS stderr, n
FROM evaluations
WHERE split <> 'val'
ORDER BY tree_id, metric, method;
