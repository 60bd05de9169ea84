-- Repos the crawl could not use, with the file and the reason.
CREATE OR REPLACE VIEW rejected_repos AS SELECT repo_id, path, reason FROM raw_rejected;
