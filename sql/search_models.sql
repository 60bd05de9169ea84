-- Models ranked by cosine similarity between a text embedding (bound as ?) and each model's
-- embedding in the weight-language space. Parameters: text vector, tree filter (or NULL), k.
SELECT repo_id, tree_id, round(list_cosine_similarity(embedding, ?::FLOAT[]), 4) AS score, documented
FROM embeddings
WHERE (?::VARCHAR IS NULL OR tree_id = ?::VARCHAR)
ORDER BY score DESC, repo_id
LIMIT ?;
