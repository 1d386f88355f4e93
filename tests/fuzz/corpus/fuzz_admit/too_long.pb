
long
llama-3-8b*ÿÿÿÿÿÿÿÿ