"""A bakery-café persona's knowledge and paraphrased questions, shared by tests and the bench."""

from __future__ import annotations

from calls.pipeline.brain.knowledge import KnowledgeEntry

BAKERY_KNOWLEDGE: tuple[KnowledgeEntry, ...] = (
    KnowledgeEntry(
        "What are your opening hours?",
        "We're open Monday to Friday from 7 am to 6 pm, Saturday from 8 am to 5 pm, "
        "and Sunday from 9 am to 2 pm.",
    ),
    KnowledgeEntry(
        "What is your address?",
        "You'll find us at 14 Mill Lane, right next to the old town library.",
    ),
    KnowledgeEntry(
        "Do you have gluten-free options?",
        "Yes! We bake gluten-free bread and brownies every day, in a separate oven.",
    ),
    KnowledgeEntry(
        "Can I order a cake for a special occasion?",
        "Absolutely. Custom cakes need 48 hours' notice; you can order in the shop or by phone.",
    ),
    KnowledgeEntry(
        "Do you deliver?",
        "We deliver within 5 kilometres for orders over 20 euros, from Tuesday to Saturday.",
    ),
    KnowledgeEntry(
        "Is there parking nearby?",
        "There's a free car park behind the shop with space for about twenty cars.",
    ),
    KnowledgeEntry(
        "Do you have wifi for customers?",
        "Yes, free wifi for customers. The password is on the card at the till.",
    ),
    KnowledgeEntry(
        "Which payment methods do you accept?",
        "We take cash, all major credit and debit cards, and contactless payments like Apple Pay.",
    ),
    KnowledgeEntry(
        "Do you have a loyalty card?",
        "Yes: every tenth coffee is free with our stamp card, just ask at the counter.",
    ),
    KnowledgeEntry(
        "How much do your pastries cost?",
        "Croissants are 2 euros 20, pastries range from 2 to 4 euros, and a coffee is 2 euros 80.",
    ),
    KnowledgeEntry(
        "Do your products contain allergens?",
        "Our kitchen handles nuts, milk, eggs and sesame; every label lists the allergens.",
    ),
    KnowledgeEntry(
        "How can I contact you?",
        "Call us on 01 23 45 67 89 or email hello@millbakery.example.",
    ),
)

# (paraphrased question, index of the entry that answers it): one per entry, worded differently.
BAKERY_PARAPHRASES: tuple[tuple[str, int], ...] = (
    ("when are you open on sunday", 0),
    ("where is the shop located", 1),
    ("I'm celiac, is there anything I can eat", 2),
    ("could you make a birthday cake for my daughter", 3),
    ("can you bring my order to my house", 4),
    ("where can I leave my car", 5),
    ("is there internet I can use while I have a coffee", 6),
    ("can I pay with my card", 7),
    ("do you have some kind of rewards program", 8),
    ("how expensive is a croissant", 9),
    ("my son is allergic to peanuts, is your food safe", 10),
    ("what's your phone number", 11),
)

OFF_TOPIC_QUESTIONS: tuple[str, ...] = (
    "what's the capital of France",
    "explain quantum physics",
    "who won the football world cup",
    "can you help me with my tax return",
)
