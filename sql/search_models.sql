-- Models ranked for a text by their zero-shot experts: score = log σ(s · cosine − o), the
-- log-probability a model's zero-shot expert gives the text against its tree's known class
-- texts (s = logit_scale; o = vocab_lse, log Σ exp(s · cosine) over those texts). A monotone
-- function of s · cosine − o, so it ranks as that log-odds does, and on the same scale as the
-- classifier's log-probability that `sql/search_known.sql` gives the trees that know the
-- text as a class. The plain cosine is returned beside it.
-- Parameters, in order: the text vector, the encoder name (vectors of different encoders are
-- never compared), the tree filter (or NULL) twice, the trees to leave out (those whose
-- classifier answers instead; [] for none), k (NULL: every row).
-- Rows from before calibration was stored (NULL) rank by plain cosine.
SELECT repo_id, tree_id,
    CASE WHEN vocab_lse IS NULL THEN cosine
        ELSE -(greatest(d, 0) + ln(1 + exp(-abs(d)))) END AS score,
    cosine, documented
FROM (
    SELECT *, vocab_lse - coalesce(logit_scale, 1) * cosine AS d
    FROM (
        SELECT *, list_cosine_similarity(embedding, ?::FLOAT[]) AS cosine
        FROM embeddings
        WHERE encoder = ? AND (?::VARCHAR IS NULL OR tree_id = ?)
            AND NOT list_contains(?::VARCHAR[], tree_id)
    )
)
ORDER BY score DESC, repo_id
LIMIT ?
