-- Every routed model's embedding in the shared weight-language (text) space.
CREATE OR REPLACE VIEW embeddings AS
SELECT e.repo_id, e.tree_id, e.encoder, e.embedding, r.documented
FROM raw_model_embeddings e
LEFT JOIN raw_repos r USING (repo_id);
