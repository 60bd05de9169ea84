-- Every routed model's embedding in the shared weight-language (text) space, with the
-- calibration its search score uses (logit_scale · cosine − vocab_lse, and unknown_mass: the
-- expected number of its classes its tree's classifier does not find).
CREATE OR REPLACE VIEW embeddings AS
SELECT e.repo_id, e.tree_id, e.encoder, e.embedding, e.logit_scale, e.vocab_lse, e.unknown_mass,
    r.documented
FROM raw_model_embeddings e
LEFT JOIN raw_repos r USING (repo_id);
