-- Models ranked for a text no tree's classifier knows, by their zero-shot experts: score =
-- ln u + log σ(s · cosine − o), the log of the expected number of the model's classes that are
-- the text. u (unknown_mass) is how many of its classes the model's classifier does not find;
-- σ(s · cosine − o) is the probability that one of them is the text, a softmax over the text
-- and the tree's known class texts (s = logit_scale, the zero-shot expert's scale read at a
-- temperature; o = vocab_lse, log Σ exp(s · cosine) over those texts). On the same scale as
-- the classifier's log-probability that `sql/search_known.sql` gives the trees that know the
-- text as a class (the expected count of a known class is its probability). u is floored at
-- 0.001: a model whose classifier finds all its classes still ranks, by its text score; rows
-- stored before u was (NULL) take u = 1, the ranking by log σ alone.
-- Parameters, in order: the text vector, the encoder name (vectors of different encoders are
-- never compared), the tree filter (or NULL) twice, the trees to leave out (those whose
-- classifier answers instead; [] for none), k (NULL: every row).
-- Rows from before calibration was stored (NULL) rank by plain cosine.
SELECT repo_id, tree_id,
    CASE WHEN vocab_lse IS NULL THEN cosine
        ELSE ln(greatest(coalesce(unknown_mass, 1), 0.001)) - (greatest(d, 0) + ln(1 + exp(-abs(d)))) END
        AS score,
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
