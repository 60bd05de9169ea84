-- Models ranked by cosine similarity between a text embedding and each model's embedding in
-- the weight-language space. Parameters: text vector, encoder name (vectors of different
-- encoders are never compared), tree filter (or NULL) twice, k.
SELECT repo_id, tree_id, list_cosine_similarity(embedding, ?::FLOAT[]) AS score, documented
FROM embeddings
WHERE encoder = ? AND (?::VARCHAR IS NULL OR tree_id = ?)
ORDER BY score DESC, repo_id
LIMIT ?
