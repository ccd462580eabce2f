-- The texts of every prompt earlier rounds used, for near-dedup against them.
-- View: used_prompts.
SELECT prompt FROM used_prompts
