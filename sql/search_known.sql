-- Models of the trees whose expert knows the text as one of its classes, ranked by the
-- classifier's calibrated probability for that class: score = ln(probability) (see
-- `sql/search_models.sql` for every other tree). The plain cosine is returned beside it.
-- Parameters, in order: the text vector, the tree ids and their class names (two lists of
-- one length), the encoder name, the tree filter (or NULL) twice, k (NULL: every row).
SELECT p.repo_id, p.tree_id, ln(greatest(p.probability, 1e-12)) AS score,
    list_cosine_similarity(e.embedding, ?::FLOAT[]) AS cosine, p.documented,
    p.class_name AS known_class
FROM predictions p
JOIN (SELECT unnest(?::VARCHAR[]) AS tree_id, unnest(?::VARCHAR[]) AS class_name) k
    USING (tree_id, class_name)
JOIN embeddings e ON e.repo_id = p.repo_id AND e.tree_id = p.tree_id AND e.encoder = ?
WHERE ?::VARCHAR IS NULL OR p.tree_id = ?
ORDER BY score DESC, p.repo_id
LIMIT ?
