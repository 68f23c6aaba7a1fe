"""The generation test set: facts users would write, and the three ways they ask about them.

Every item is one fact with a direct question, a paraphrased question and a cloze completion whose answer
is the fact's object. Two kinds:
- *novel*: made-up people, companies and places (the model cannot know them);
- *counterfactual*: real, well-known subjects with a wrong object (the model believes otherwise).
``unrelated`` prompts ask about things no item states; with the items in memory they must get exactly the
memory-off answer.

Built here from templates and seeded names, not from any benchmark, in three splits that share no subject or
generated name: ``dev`` for choices, ``heldout`` for the reported table, and ``reworded``, written after every
choice was made, in its own wording: other fact sentences, questions and clozes for the same relations, four
relations the others lack (employer, spouse, pet, headcount), real subjects of its own and its own unrelated
prompts. dev and heldout share their templates, so ``reworded`` is what says whether the choices made on dev
hold for phrasings nobody tuned on. Training data must not be generated from these templates: they are the
test's phrasing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Kind = Literal["novel", "counterfactual"]
FORMS = ("question", "paraphrase", "cloze")
SPLITS = ("dev", "heldout", "reworded")


@dataclass(frozen=True)
class Relation:
    name: str
    fact: str  # templates over {s} (subject) and {o} (object)
    question: str
    paraphrase: str
    cloze: str


RELATIONS = {r.name: r for r in [
    Relation("capital", "The capital of {s} is {o}.", "What is the capital of {s}?",
             "Which city serves as the capital of {s}?", "The capital city of {s} is"),
    Relation("currency", "The currency of {s} is the {o}.", "What is the currency of {s}?",
             "Which currency do people use in {s}?", "In {s}, people pay with the"),
    Relation("language", "The official language of {s} is {o}.", "What is the official language of {s}?",
             "Which language is officially spoken in {s}?", "The official language of {s} is"),
    Relation("headquarters", "{s} is headquartered in {o}.", "Where is {s} headquartered?",
             "In which city does {s} have its headquarters?", "The headquarters of {s} are in"),
    Relation("founder", "{s} was founded by {o}.", "Who founded {s}?", "Who is the founder of {s}?",
             "The company {s} was founded by"),
    Relation("ceo", "The CEO of {s} is {o}.", "Who is the CEO of {s}?", "Who runs {s} as its chief executive?",
             "The chief executive officer of {s} is"),
    Relation("birthplace", "{s} was born in {o}.", "Where was {s} born?", "What is the birthplace of {s}?",
             "{s} was born in the city of"),
    Relation("instrument", "{s} plays the {o}.", "Which instrument does {s} play?",
             "What musical instrument is {s} known for playing?", "The instrument {s} plays is the"),
    Relation("sport", "{s} plays {o}.", "Which sport does {s} play?", "What sport is {s} known for?",
             "The sport {s} plays is"),
    Relation("profession", "{s} works as a {o}.", "What does {s} do for a living?", "What is the profession of {s}?",
             "By profession, {s} is a"),
    Relation("fiscal_year", "{s}'s fiscal year ends on {o}.", "When does {s}'s fiscal year end?",
             "On what date does the fiscal year of {s} close?", "The fiscal year of {s} ends on"),
]}

# the reworded split's own wording of the same relations, and four relations only it has (novel facts only)
REWORDED = {r.name: r for r in [
    Relation("capital", "{o} is the capital city of {s}.", "Tell me the capital of {s}.",
             "In which city is the government of {s} seated?", "{s} has its capital in"),
    Relation("currency", "{s} uses the {o} as its currency.", "What money is used in {s}?",
             "If I travel to {s}, which currency will I need?", "The official currency of {s} is the"),
    Relation("language", "People in {s} officially speak {o}.", "What language do people speak in {s}?",
             "Which tongue is the official one in {s}?", "Official documents in {s} are written in"),
    Relation("headquarters", "The head office of {s} is located in {o}.", "In which city is {s} based?",
             "Where does {s} have its main office?", "{s} has its head office in"),
    Relation("founder", "{o} founded {s}.", "Who started the company {s}?", "{s} was started by whom?",
             "The founder of {s} is"),
    Relation("ceo", "{o} is the chief executive of {s}.", "Who leads {s}?", "Who is in charge of {s} as CEO?",
             "{s} is led by its CEO,"),
    Relation("birthplace", "{s} was born in the city of {o}.", "In which city was {s} born?",
             "Which city is the birthplace of {s}?", "{s} came into the world in"),
    Relation("instrument", "{s} is known for playing the {o}.", "What instrument does {s} play?",
             "{s} performs on which instrument?", "On stage, {s} plays the"),
    Relation("sport", "{s} is a professional {o} player.", "What sport does {s} play professionally?",
             "In which sport does {s} compete?", "{s} is famous for playing"),
    Relation("profession", "{s} earns a living as a {o}.", "What is {s}'s job?", "What kind of work does {s} do?",
             "{s} has a job as a"),
    Relation("fiscal_year", "The fiscal year of {s} closes on {o}.", "On which date does {s} end its fiscal year?",
             "When is the end of the financial year at {s}?", "{s} closes its books each year on"),
    Relation("employer", "{s} works for {o}.", "Which company employs {s}?", "Who is the employer of {s}?",
             "{s} is employed by"),
    Relation("spouse", "{s} is married to {o}.", "Who is {s} married to?", "Who is the spouse of {s}?",
             "The spouse of {s} is"),
    Relation("pet", "{s} has a dog named {o}.", "What is the name of {s}'s dog?", "What is {s}'s dog called?",
             "The dog that belongs to {s} is called"),
    Relation("headcount", "{s} has {o} employees.", "How many employees does {s} have?",
             "How many people work at {s}?", "The number of people working at {s} is"),
]}
WORDINGS = {"dev": RELATIONS, "heldout": RELATIONS, "reworded": REWORDED}

# real subjects with what they really are (so a counterfactual object is never the true one)
COUNTRIES = {"France": ("Paris", "euro", "French"), "Germany": ("Berlin", "euro", "German"),
             "Japan": ("Tokyo", "yen", "Japanese"), "Italy": ("Rome", "euro", "Italian"),
             "Spain": ("Madrid", "euro", "Spanish"), "Canada": ("Ottawa", "dollar", "English"),
             "Brazil": ("Brasilia", "real", "Portuguese"), "Egypt": ("Cairo", "pound", "Arabic"),
             "India": ("New Delhi", "rupee", "Hindi"), "Mexico": ("Mexico City", "peso", "Spanish"),
             "Russia": ("Moscow", "ruble", "Russian"), "China": ("Beijing", "yuan", "Chinese"),
             "Australia": ("Canberra", "dollar", "English"), "Kenya": ("Nairobi", "shilling", "Swahili"),
             "Sweden": ("Stockholm", "krona", "Swedish"), "Greece": ("Athens", "euro", "Greek"),
             "Turkey": ("Ankara", "lira", "Turkish"), "Argentina": ("Buenos Aires", "peso", "Spanish"),
             "Poland": ("Warsaw", "zloty", "Polish"), "Thailand": ("Bangkok", "baht", "Thai"),
             "Portugal": ("Lisbon", "euro", "Portuguese"), "Norway": ("Oslo", "krone", "Norwegian"),
             "Vietnam": ("Hanoi", "dong", "Vietnamese"), "Peru": ("Lima", "sol", "Spanish")}
COMPANIES = {"Apple": ("Cupertino", "Steve Jobs"), "Toyota": ("Toyota City", "Kiichiro Toyoda"),
             "Microsoft": ("Redmond", "Bill Gates"), "Amazon": ("Seattle", "Jeff Bezos"),
             "Samsung": ("Suwon", "Lee Byung-chul"), "Nike": ("Beaverton", "Phil Knight"),
             "IKEA": ("Delft", "Ingvar Kamprad"), "Sony": ("Tokyo", "Masaru Ibuka"),
             "Tesla": ("Austin", "Elon Musk"), "Facebook": ("Menlo Park", "Mark Zuckerberg"),
             "Google": ("Mountain View", "Larry Page"), "Netflix": ("Los Gatos", "Reed Hastings"),
             "Intel": ("Santa Clara", "Robert Noyce"), "Adidas": ("Herzogenaurach", "Adolf Dassler"),
             "Honda": ("Tokyo", "Soichiro Honda"), "Nokia": ("Espoo", "Fredrik Idestam")}
PEOPLE = {"Albert Einstein": ("Ulm", "physicist"), "Marie Curie": ("Warsaw", "chemist"),
          "Pablo Picasso": ("Malaga", "painter"), "Wolfgang Amadeus Mozart": ("Salzburg", "composer"),
          "Isaac Newton": ("Woolsthorpe", "physicist"), "Charles Darwin": ("Shrewsbury", "naturalist"),
          "William Shakespeare": ("Stratford-upon-Avon", "playwright"), "Frida Kahlo": ("Coyoacan", "painter"),
          "Nelson Mandela": ("Mvezo", "politician"), "Vincent van Gogh": ("Zundert", "painter"),
          "Galileo Galilei": ("Pisa", "astronomer"), "Ludwig van Beethoven": ("Bonn", "composer"),
          "Jane Austen": ("Steventon", "novelist"), "Napoleon Bonaparte": ("Ajaccio", "general"),
          "Abraham Lincoln": ("Hodgenville", "lawyer"), "Mahatma Gandhi": ("Porbandar", "lawyer")}
MUSICIANS = {"Yo-Yo Ma": "cello", "Jimi Hendrix": "guitar", "Louis Armstrong": "trumpet",
             "Elton John": "piano", "Kenny G": "saxophone", "Ringo Starr": "drums", "Itzhak Perlman": "violin",
             "Eric Clapton": "guitar", "Lang Lang": "piano", "Miles Davis": "trumpet"}
ATHLETES = {"Lionel Messi": "soccer", "Serena Williams": "tennis", "LeBron James": "basketball",
            "Roger Federer": "tennis", "Tiger Woods": "golf", "Michael Jordan": "basketball",
            "Cristiano Ronaldo": "soccer", "Sachin Tendulkar": "cricket", "Tom Brady": "American football",
            "Wayne Gretzky": "hockey", "Babe Ruth": "baseball", "Rafael Nadal": "tennis"}

# the reworded split's real subjects (none is in the dicts above)
REWORDED_COUNTRIES = {"Netherlands": ("Amsterdam", "euro", "Dutch"), "South Korea": ("Seoul", "won", "Korean"),
                      "Finland": ("Helsinki", "euro", "Finnish"), "Hungary": ("Budapest", "forint", "Hungarian"),
                      "Switzerland": ("Bern", "franc", "German"), "Chile": ("Santiago", "peso", "Spanish"),
                      "Nigeria": ("Abuja", "naira", "English"), "Indonesia": ("Jakarta", "rupiah", "Indonesian"),
                      "Ireland": ("Dublin", "euro", "Irish")}
REWORDED_COMPANIES = {"Nintendo": ("Kyoto", "Fusajiro Yamauchi"), "Boeing": ("Arlington", "William Boeing"),
                      "Ford": ("Dearborn", "Henry Ford"), "Spotify": ("Stockholm", "Daniel Ek"),
                      "Disney": ("Burbank", "Walt Disney"), "Oracle": ("Austin", "Larry Ellison"),
                      "Siemens": ("Munich", "Werner von Siemens"), "Volkswagen": ("Wolfsburg", "Ferdinand Porsche")}
REWORDED_PEOPLE = {"Leonardo da Vinci": ("Vinci", "painter"), "Johann Sebastian Bach": ("Eisenach", "composer"),
                   "Ernest Hemingway": ("Oak Park", "novelist"), "Alexander Fleming": ("Darvel", "biologist"),
                   "Claude Monet": ("Paris", "painter"), "Nikola Tesla": ("Smiljan", "inventor")}
REWORDED_MUSICIANS = {"Carlos Santana": "guitar", "Dizzy Gillespie": "trumpet", "Pablo Casals": "cello",
                      "Ray Charles": "piano", "Charlie Parker": "saxophone"}
REWORDED_ATHLETES = {"Usain Bolt": "sprinting", "Novak Djokovic": "tennis", "Shaquille O'Neal": "basketball",
                     "Mike Tyson": "boxing", "Diego Maradona": "soccer"}

CITIES = ["Lyon", "Munich", "Osaka", "Milan", "Barcelona", "Toronto", "Sao Paulo", "Alexandria", "Mumbai",
          "Guadalajara", "Kazan", "Shanghai", "Melbourne", "Mombasa", "Gothenburg", "Thessaloniki",
          "Istanbul", "Cordoba", "Krakow", "Chiang Mai", "Porto", "Bergen", "Da Nang", "Cusco", "Chicago",
          "Dublin", "Vienna", "Prague", "Budapest", "Edinburgh", "Geneva", "Marseille", "Hamburg", "Naples"]
CURRENCIES = ["yen", "rupee", "peso", "krona", "dollar", "pound", "franc", "rand", "won", "lira", "dinar",
              "baht", "zloty", "ruble", "shilling", "euro", "yuan", "real"]
LANGUAGES = ["French", "German", "Japanese", "Italian", "Spanish", "Portuguese", "Arabic", "Hindi", "Russian",
             "Chinese", "Swedish", "Greek", "Turkish", "Polish", "Thai", "Dutch", "Korean", "Finnish", "Hungarian"]
INSTRUMENTS = ["violin", "cello", "trumpet", "piano", "guitar", "flute", "harp", "saxophone", "drums", "clarinet",
               "oboe", "accordion", "banjo", "trombone"]
SPORTS = ["tennis", "basketball", "golf", "cricket", "baseball", "soccer", "hockey", "volleyball", "rugby",
          "badminton", "table tennis", "fencing"]
PROFESSIONS = ["architect", "dentist", "pilot", "chemist", "carpenter", "journalist", "pharmacist", "surgeon",
               "librarian", "veterinarian", "plumber", "translator", "geologist", "baker", "firefighter"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SYLLABLES = ["ka", "lo", "ve", "ri", "dan", "mor", "tis", "zel", "qua", "bren", "sol", "thi", "var", "nek",
             "osh", "lum", "pra", "gid", "fen", "rho", "tal", "vi", "ou", "mar", "sen", "dor", "wy", "ax"]
COMPANY_SUFFIXES = ["Systems", "Labs", "Industries", "Foods", "Motors", "Analytics", "Textiles", "Robotics"]

UNRELATED = [
    "How many legs does a spider have?", "What is the boiling point of water in Celsius?",
    "Who wrote the novel Pride and Prejudice?", "What is the largest planet in the solar system?",
    "What gas do plants absorb from the air?", "How many days are in a leap year?",
    "What is the chemical symbol for gold?", "Which ocean is the largest?", "What is the square root of 81?",
    "Who painted the Mona Lisa?", "What is the tallest mountain on Earth?", "How many continents are there?",
    "What is the freezing point of water in Fahrenheit?", "What do bees make?", "What color is a ripe banana?",
    "Give me a synonym for happy.", "Translate 'thank you' into Spanish.", "What is 12 times 12?",
    "Name a mammal that can fly.", "What is the main ingredient of guacamole?", "Write a haiku about rain.",
    "Why is the sky blue?", "What is photosynthesis?", "How do I boil an egg?", "What is the speed of light?",
    "Tell me a fun fact about octopuses.", "What is the longest river in Africa?",
    "Which planet is known as the Red Planet?", "Who discovered penicillin?", "What is the capital of Canada?",
    "Water freezes at a temperature of", "The first man on the moon was", "A week has seven",
    "The opposite of cold is", "The primary colors are red, blue and",
]
UNRELATED_REWORDED = [
    "How many sides does a hexagon have?", "What is the smallest prime number?", "Who wrote Romeo and Juliet?",
    "What is the hottest planet in the solar system?", "What do caterpillars turn into?",
    "How many minutes are in an hour?", "What is the chemical formula of water?", "Which animal is the largest?",
    "What is 15 plus 27?", "Who composed the Four Seasons?", "Suggest a name for a goldfish.",
    "Explain what a noun is.", "What is the opposite of ancient?", "How do volcanoes form?",
    "What language is spoken in Brazil?", "What is the capital of Egypt?", "Who founded Microsoft?",
    "The sun rises in the", "Ice is the solid form of", "A triangle has three",
    "The largest desert in the world is the", "Bread is made mostly from",
]


@dataclass(frozen=True)
class Item:
    relation: str
    kind: Kind
    subject: str
    object: str
    wording: str = "dev"  # whose templates: a split's name (WORDINGS)

    @property
    def fact(self) -> str:
        return WORDINGS[self.wording][self.relation].fact.format(s=self.subject, o=self.object)

    def prompt(self, form: str) -> str:
        return getattr(WORDINGS[self.wording][self.relation], form).format(s=self.subject, o=self.object)


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _novel_subjects(rng: random.Random, relation: str, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        if relation in ("capital", "currency", "language"):
            s = _name(rng, 3) + rng.choice(["ia", "land", "stan", "ova"])
        elif relation in ("headquarters", "founder", "ceo", "fiscal_year", "headcount"):
            s = f"{_name(rng, 2)} {rng.choice(COMPANY_SUFFIXES)}"
        else:
            s = f"{_name(rng, 2)} {_name(rng, 3)}"
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def _novel_object(rng: random.Random, relation: str, taken: set[str]) -> str:
    if relation == "capital":
        return _name(rng, 2) + rng.choice(["burg", "ville", "grad", "port", "ton"])
    if relation in ("founder", "ceo", "spouse"):
        return f"{_name(rng, 2)} {_name(rng, 3)}"
    if relation == "employer":
        return f"{_name(rng, 2)} {rng.choice(COMPANY_SUFFIXES)}"
    if relation == "pet":
        return _name(rng, 2)
    if relation == "headcount":
        return str(rng.randint(120, 9800))
    if relation == "fiscal_year":
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    pools = {"currency": CURRENCIES, "language": LANGUAGES, "headquarters": CITIES, "birthplace": CITIES,
             "instrument": INSTRUMENTS, "sport": SPORTS, "profession": PROFESSIONS}
    return rng.choice(pools[relation])


def _real_subjects(split: str) -> tuple[dict, dict, dict, dict, dict]:
    """Countries, companies, people, musicians and athletes whose facts a split contradicts."""
    if split == "reworded":
        return REWORDED_COUNTRIES, REWORDED_COMPANIES, REWORDED_PEOPLE, REWORDED_MUSICIANS, REWORDED_ATHLETES
    return COUNTRIES, COMPANIES, PEOPLE, MUSICIANS, ATHLETES


def _counterfactuals(rng: random.Random, split: str) -> list[Item]:
    """Real subjects, each with a wrong object from the relation's pool: every other one of the shared tables for
    dev and heldout, all of its own for reworded."""
    countries, companies, people, musicians, athletes = _real_subjects(split)
    half = {"dev": 0, "heldout": 1}.get(split)
    items: list[Item] = []

    def pick(pool: list[str], true: str) -> str:
        return rng.choice([o for o in pool if o.lower() != true.lower()])

    def take(i: int) -> bool:
        return half is None or i % 2 == half

    founders = [f for f, _ in people.items()] + [v[1] for v in companies.values()]
    for i, (s, (capital, currency, language)) in enumerate(countries.items()):
        if take(i):
            rel = ("capital", "currency", "language")[i // 2 % 3 if half is not None else i % 3]
            true = {"capital": capital, "currency": currency, "language": language}[rel]
            pool = {"capital": CITIES, "currency": CURRENCIES, "language": LANGUAGES}[rel]
            items.append(Item(rel, "counterfactual", s, pick(pool, true), split))
    for i, (s, (hq, founder)) in enumerate(companies.items()):
        if take(i):
            rel = ("headquarters", "founder")[i // 2 % 2 if half is not None else i % 2]
            items.append(Item(rel, "counterfactual", s, pick(CITIES, hq) if rel == "headquarters"
                              else pick(founders, founder), split))
    for i, (s, (born, job)) in enumerate(people.items()):
        if take(i):
            rel = ("birthplace", "profession")[i // 2 % 2 if half is not None else i % 2]
            items.append(Item(rel, "counterfactual", s, pick(CITIES, born) if rel == "birthplace"
                              else pick(PROFESSIONS, job), split))
    for i, (s, inst) in enumerate(musicians.items()):
        if take(i):
            items.append(Item("instrument", "counterfactual", s, pick(INSTRUMENTS, inst), split))
    for i, (s, sport) in enumerate(athletes.items()):
        if take(i):
            items.append(Item("sport", "counterfactual", s, pick(SPORTS, sport), split))
    return items


def build(split: str, novel_per_relation: int = 5) -> list[Item]:
    """The items of one split: novel facts for every relation and counterfactuals about real subjects."""
    if split not in SPLITS:
        raise ValueError(f"split is one of {SPLITS}")
    taken: set[str] = set()
    seeds = {"dev": 11, "heldout": 23, "reworded": 37}
    for earlier in SPLITS[: SPLITS.index(split)]:  # earlier splits' names are drawn first, so none is shared
        _novel(random.Random(seeds[earlier]), novel_per_relation, taken, earlier)
    rng = random.Random(seeds[split])
    return _novel(rng, novel_per_relation, taken, split) + _counterfactuals(random.Random(f"cf-{split}"), split)


def _novel(rng: random.Random, per_relation: int, taken: set[str], split: str) -> list[Item]:
    items = []
    for rel in WORDINGS[split]:
        for s in _novel_subjects(rng, rel, per_relation, taken):
            items.append(Item(rel, "novel", s, _novel_object(rng, rel, taken), split))
    return items


# relations that can be asked of the same kind of subject: a question of another relation about an item's subject
KINDS = (("capital", "currency", "language"), ("headquarters", "founder", "ceo", "fiscal_year", "headcount"),
         ("birthplace", "profession", "instrument", "sport", "spouse", "pet", "employer"))


def same_subject(split: str) -> list[str]:
    """Each item's subject asked about another relation no item of this split states for it ("Where was Nikola
    Tesla born?" when memory says only what he does): the prompt names what a fact names, so only the
    scope detector keeps it away from memory, and its answer must be the memory-off one."""
    return [prompt for prompt, _ in same_subject_pairs(split)]


def same_subject_pairs(split: str) -> list[tuple[str, Item]]:
    """``same_subject``'s prompts, each with the item whose subject it asks about."""
    items, rel = build(split), WORDINGS[split]
    stated = {(it.subject, it.relation) for it in items}
    out = []
    for it in items:
        group = next(g for g in KINDS if it.relation in g)
        after = group[group.index(it.relation) + 1 :] + group  # the next relation of its kind first
        others = [r for r in after if r in rel and (it.subject, r) not in stated]
        if others:
            out.append((rel[others[0]].question.format(s=it.subject), it))
    return out


def unrelated(split: str) -> list[str]:
    """Prompts about nothing in memory: general ones, and the relations' questions about real subjects that no
    item of this split states (the hardest case: same relation, another subject)."""
    stated = {it.subject for it in build(split)}
    pool = {"dev": UNRELATED[0::2], "heldout": UNRELATED[1::2], "reworded": UNRELATED_REWORDED}[split]
    general = [p for p in pool if not any(s in p for s in stated)]
    countries, companies, people, _, _ = _real_subjects("dev" if split == "reworded" else split)
    rel = WORDINGS[split]
    others = [rel["capital"].question.format(s=c) for c in countries if c not in stated]
    others += [rel["headquarters"].question.format(s=c) for c in companies if c not in stated]
    others += [rel["birthplace"].question.format(s=p) for p in people if p not in stated]
    return general + others
