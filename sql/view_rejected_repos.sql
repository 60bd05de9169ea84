-- Repos probex could not use, with the file, the reason, and the stage that found it:
-- crawl (headers, cards, paths), weights (NaN/Inf or unreadable layers, an architecture that
-- is not its declared base's) or layers (the same checks on the layers the experts read).
CREATE OR REPLACE VIEW rejected_repos AS
SELECT repo_id, path, reason, coalesce(stage, 'crawl') AS stage FROM raw_rejected;
