-- Preference pairs for DPO, one per prompt, by the strategy $strategy:
--   best_vs_random (the paper's best): the top response against a random other one;
--   best_vs_worst: the top against the bottom;
--   random_pair: two random responses, the higher-scored one chosen.
-- "Random" is a seeded hash order. A pair whose scores are equal is skipped: it
-- teaches nothing. Parameter: $strategy (the one sql/select_picks.sql was given).
-- Views: picks (sql/select_picks.sql: the pairs are chosen there, over ids and scores,
--        by the strategy and seed it was given), prompts.
SELECT c.prompt_id, p.prompt, c.response AS chosen, r.response AS rejected,
       c.score AS chosen_score, r.score AS rejected_score, c.response_id AS chosen_id, r.response_id AS rejected_id,
       $strategy AS strategy
FROM picks c
JOIN picks r ON r.prompt_id = c.prompt_id AND r.pick = 'rejected'
JOIN prompts p ON p.prompt_id = c.prompt_id
WHERE c.pick = 'chosen'
ORDER BY c.prompt_id
