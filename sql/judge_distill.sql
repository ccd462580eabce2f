-- A seeded sample of judged (prompt, response) pairs: the judge's own real-valued
-- scores, to train it further on (self-distillation).
-- Views: picks (sql/select_picks.sql: the sample is drawn there, the first n judged
--        responses in the seeded hash order), judgments (for the probabilities), prompts.
SELECT k.response_id, k.prompt_id, p.prompt, k.response, j.score, j.score_int, j.probs
FROM picks k
JOIN (SELECT * FROM judgments WHERE response_id IN (SELECT response_id FROM picks WHERE pick = 'distill')) j
  USING (response_id)
JOIN prompts p ON p.prompt_id = k.prompt_id
WHERE k.pick = 'distill'
ORDER BY k.ord, k.response_id
