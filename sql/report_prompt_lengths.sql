-- The report's prompt_lengths figure: Prompts per length bucket, per round (round 1: the
-- seeds).
select round,
  floor(len(string_split(prompt, ' ')) / 10) * 10 as words,
  count(*) as prompts
from prompts
group by all
order by all
