-- Models ranked for a text: score = logit_scale · cosine − vocab_lse, the log-odds the
-- model's zero-shot expert gives the text against its tree's known class texts (see
-- probex_core/search.py, "Calibration"); the plain cosine is returned beside it.
-- Parameters, in order: the text vector, the encoder name (vectors of different encoders are
-- never compared), the tree filter (or NULL) twice, k.
-- Rows from before calibration was stored (NULL) rank by plain cosine.
SELECT repo_id, tree_id, coalesce(logit_scale, 1) * cosine - coalesce(vocab_lse, 0) AS score,
    cosine, documented
FROM (
    SELECT *, list_cosine_similarity(embedding, ?::FLOAT[]) AS cosine
    FROM embeddings
    WHERE encoder = ? AND (?::VARCHAR IS NULL OR tree_id = ?)
)
ORDER BY score DESC, repo_id
LIMIT ?
