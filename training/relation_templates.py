"""Relations CounterFact lacks, in the shapes users write and ask them, for the relation gate's training.

CounterFact's relations come as clozes and statements only; users ask questions, about relations no benchmark
lists. These relations are neither CounterFact's (their labels would clash with its) nor any of the
generation test set's (bench/generation/items.py: capital, currency, language, headquarters, founder, CEO,
birthplace, instrument, sport, profession, fiscal year, employer, spouse, pet, headcount), so that set still
says how the gate does on relations it never saw. Each relation: statements over {s} and {o}, questions and
clozes over {s}. Subjects are generated names (masked before encoding anyway), objects a few of each kind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class OwnRelation:
    name: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    clozes: tuple[str, ...]
    objects: tuple[str, ...]


OWN_RELATIONS = [
    OwnRelation("population", ("{s} has a population of {o}.", "About {o} people live in {s}."),
                ("What is the population of {s}?", "How many people live in {s}?", "How populous is {s}?"),
                ("The population of {s} is", "{s} is home to about"), ("12,000", "3 million", "450,000")),
    OwnRelation("author", ("{s} was written by {o}.", "{o} is the author of {s}."),
                ("Who wrote {s}?", "Who is the author of {s}?", "Which writer penned {s}?"),
                ("The author of {s} is", "{s} is a novel by"), ("Mara Quill", "Tobin Hale", "Ines Varga")),
    OwnRelation("director", ("{s} was directed by {o}.", "The director of {s} is {o}."),
                ("Who directed {s}?", "Who was the director of the film {s}?", "Which filmmaker made {s}?"),
                ("The film {s} was directed by", "{s} is a movie directed by"), ("Lena Orr", "Paolo Brisk")),
    OwnRelation("colour", ("The colour of {s} is {o}.", "{s} is painted {o}."),
                ("What color is {s}?", "Which colour is {s} painted?", "What is the colour of {s}?"),
                ("{s} is coloured", "The paint on {s} is"), ("blue", "dark green", "yellow", "crimson")),
    OwnRelation("height", ("{s} is {o} metres tall.", "The height of {s} is {o} metres."),
                ("How tall is {s}?", "What is the height of {s}?", "How high does {s} stand?"),
                ("The height of {s} is", "{s} rises to a height of"), ("12", "340", "1.85")),
    OwnRelation("age", ("{s} is {o} years old.", "{s} turned {o} this year."),
                ("How old is {s}?", "What is the age of {s}?", "What age is {s}?"),
                ("The age of {s} is", "This year {s} turns"), ("34", "71", "9")),
    OwnRelation("nickname", ("{s} is nicknamed {o}.", "People call {s} {o}."),
                ("What is {s}'s nickname?", "What do people call {s}?", "By what nickname is {s} known?"),
                ("The nickname of {s} is", "Friends call {s}"), ("the Hammer", "Sunny", "the Professor")),
    OwnRelation("hobby", ("{s} enjoys {o} in their free time.", "{s}'s hobby is {o}."),
                ("What is {s}'s hobby?", "What does {s} like to do for fun?", "How does {s} spend free time?"),
                ("In their spare time, {s} likes", "The hobby of {s} is"), ("knitting", "birdwatching", "chess")),
    OwnRelation("favourite_food", ("{s}'s favourite food is {o}.", "{s} loves eating {o}."),
                ("What does {s} like to eat?", "What is {s}'s favourite dish?", "Which food does {s} love most?"),
                ("The favourite meal of {s} is", "Above all, {s} likes to eat"), ("lasagne", "sushi", "dumplings")),
    OwnRelation("phone", ("The phone number of {s} is {o}.", "{s} can be called at {o}."),
                ("What is {s}'s phone number?", "How can I call {s}?", "At which number can {s} be reached?"),
                ("You can reach {s} by phone at", "The telephone number of {s} is"), ("555-0142", "020 7946 0018")),
    OwnRelation("residence", ("{s} lives at {o}.", "The home address of {s} is {o}."),
                ("Where does {s} live?", "What is the home address of {s}?", "At what address does {s} reside?"),
                ("{s} resides at", "The home of {s} is at"), ("14 Elm Street", "2 Harbour Road", "9 Mill Lane")),
    OwnRelation("price", ("{s} costs {o} dollars.", "The price of {s} is {o} dollars."),
                ("How much does {s} cost?", "What is the price of {s}?", "What does {s} sell for?"),
                ("The price of {s} is", "{s} sells for"), ("20", "1,299", "4.50")),
    OwnRelation("weight", ("{s} weighs {o} kilograms.", "The weight of {s} is {o} kilograms."),
                ("How much does {s} weigh?", "What is the weight of {s}?", "How heavy is {s}?"),
                ("The weight of {s} is", "{s} tips the scales at"), ("3", "82", "1,400")),
    OwnRelation("event_date", ("{s} will be held on {o}.", "{s} takes place on {o}."),
                ("When will {s} take place?", "What is the date of {s}?", "On which day is {s} held?"),
                ("{s} is scheduled for", "The date of {s} is"), ("May 4", "the 12th of June", "Friday")),
    OwnRelation("mascot", ("The mascot of {s} is {o}.", "{s} has {o} as its mascot."),
                ("What is the mascot of {s}?", "Which animal is the mascot of {s}?", "Who is {s}'s mascot?"),
                ("{s}'s mascot is", "The team mascot of {s} is"), ("a red fox", "an owl", "a bear")),
    OwnRelation("motto", ("The motto of {s} is {o}.", "{s} uses the motto {o}."),
                ("What is the motto of {s}?", "What slogan does {s} use?", "Which motto does {s} live by?"),
                ("{s}'s motto reads", "The slogan of {s} is"), ("'always forward'", "'truth and light'")),
    OwnRelation("manager", ("{s} reports to {o}.", "The manager of {s} is {o}."),
                ("Who is {s}'s manager?", "Who does {s} report to?", "Who supervises {s}?"),
                ("The manager of {s} is", "{s} answers to"), ("Dana Pike", "Omar Velt")),
    OwnRelation("school", ("{s} studied at {o}.", "{s} is a graduate of {o}."),
                ("Where did {s} go to university?", "Which school did {s} attend?", "Where was {s} educated?"),
                ("{s} graduated from", "{s} earned a degree at"), ("Harlow College", "the University of Tesk")),
    OwnRelation("award", ("{s} won the {o}.", "{s} received the {o}."),
                ("What award did {s} win?", "Which prize has {s} received?", "What honour was given to {s}?"),
                ("{s} was awarded the", "The prize won by {s} is the"), ("Golden Quill", "Varn Medal")),
    OwnRelation("opening_time", ("{s} opens at {o}.", "{s} opens its doors at {o}."),
                ("When does {s} open?", "What time does {s} open?", "At what hour does {s} open?"),
                ("{s} opens every morning at", "The opening time of {s} is"), ("8 am", "half past nine")),
    OwnRelation("top_speed", ("{s} has a top speed of {o} km/h.", "{s} can reach {o} km/h."),
                ("How fast is {s}?", "What is the top speed of {s}?", "How fast can {s} go?"),
                ("The maximum speed of {s} is", "{s} reaches speeds of up to"), ("240", "95", "1,100")),
    OwnRelation("sibling", ("{o} is the brother of {s}.", "{s}'s brother is {o}."),
                ("Who is {s}'s brother?", "What is the name of {s}'s brother?", "Does {s} have a brother?"),
                ("The brother of {s} is", "{s}'s brother is called"), ("Ivo", "Marcus Bell")),
    OwnRelation("duration", ("{s} lasts {o} minutes.", "The running time of {s} is {o} minutes."),
                ("How long is {s}?", "What is the running time of {s}?", "How many minutes does {s} last?"),
                ("The length of {s} is", "{s} runs for"), ("90", "142", "12")),
    OwnRelation("inventor", ("{s} was invented by {o}.", "{o} invented {s}."),
                ("Who invented {s}?", "Who came up with {s}?", "Who is the inventor of {s}?"),
                ("The inventor of {s} is", "{s} was first built by"), ("Ada Korr", "Felix Brandt")),
    OwnRelation("area", ("{s} covers an area of {o} square kilometres.", "The area of {s} is {o} square kilometres."),
                ("How large is {s}?", "What is the area of {s}?", "How big is {s} in square kilometres?"),
                ("The total area of {s} is", "{s} spans"), ("450", "12,300", "7")),
    OwnRelation("favourite_colour", ("{s}'s favourite colour is {o}.", "{s} likes the colour {o} best."),
                ("What is {s}'s favourite colour?", "Which colour does {s} like best?", "What colour does {s} prefer?"),
                ("The favourite colour of {s} is", "Of all colours, {s} prefers"), ("purple", "orange", "teal")),
]

_SYLLABLES = ("ka", "lo", "ve", "ri", "dan", "mor", "tis", "zel", "qua", "bren", "sol", "thi", "var", "nek")


def own_sentences(per_template: int = 8, seed: int = 0) -> list[tuple[str, str]]:
    """(sentence, relation) pairs: every template filled with ``per_template`` generated subjects."""
    rng = random.Random(seed)
    out = []
    for rel in OWN_RELATIONS:
        for template in rel.statements + rel.questions + rel.clozes:
            for _ in range(per_template):
                s = " ".join("".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize() for _ in range(2))
                out.append((template.format(s=s, o=rng.choice(rel.objects)), rel.name))
    return out
