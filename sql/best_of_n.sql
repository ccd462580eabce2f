-- Best-of-n: the top-scored response of every prompt becomes this round's SFT data.
-- Ties are broken by response_id, so the choice is deterministic.
-- Views: picks (sql/select_picks.sql: the pick is made there, over ids and scores),
--        prompts (this round; one row a prompt_id).
SELECT k.prompt_id, p.prompt, k.response, k.score, 'best_of_n' AS source, k.response_id, k.n
FROM picks k
JOIN prompts p USING (prompt_id)
WHERE k.pick = 'best'
ORDER BY k.prompt_id
