
never
llama-3-8b*À>d*À>d*À>d*À>d*À>d