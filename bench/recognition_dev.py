"""A development set for the offline recogniser, apart from the bench's own sentences.

`bench/voice_loop.py`'s `IN_DOMAIN` and `GENERAL` are held out: tune on these. The in-domain
sentences are what a bakery customer might ask Mara (`seed_demo.MARA_KNOWLEDGE`) in other
words than her questions; the general ones are everyday sentences outside her topics. Each is
spoken by several espeak voices and rates (`DEV_VOICES`).
"""

from __future__ import annotations

DEV_IN_DOMAIN = [
    "When do you open in the morning?",
    "What time do you close on Saturday?",
    "Are you open on Sunday afternoon?",
    "Is the bakery closed on Mondays?",
    "Until when do you serve lunch?",
    "What is your address?",
    "How do I get to the bakery?",
    "Which bus stops near you?",
    "Is there a car park nearby?",
    "Can I park behind the shop?",
    "What do you bake?",
    "What is the soup of the day?",
    "Do you have croissants?",
    "How much is a flat white?",
    "How much does an espresso cost?",
    "What does a sourdough loaf cost?",
    "Is oat milk extra?",
    "Do you have vegan bread?",
    "Are the macarons made without gluten?",
    "Do your cakes contain nuts?",
    "I would like to order a chocolate cake.",
    "How much notice do you need for a cake?",
    "What flavours of cake do you have?",
    "How much is a six inch cake?",
    "Can you write a message on the cake?",
    "Do you deliver on Saturday?",
    "How much does delivery cost?",
    "Is delivery free?",
    "Do you have wifi?",
    "What is the wifi password?",
    "Can I pay by card?",
    "Do you accept cash?",
    "Do you have a loyalty card?",
    "What is your phone number?",
    "Can I bring my dog?",
    "Is the cafe wheelchair accessible?",
]

DEV_GENERAL = [
    "I lost my keys on the way to work.",
    "Could you call me back tomorrow?",
    "My daughter starts school in September.",
    "The train was late again this morning.",
    "I need to book a table for my parents.",
    "We went to the beach last weekend.",
    "Can you tell me a joke?",
    "It is raining quite hard outside.",
    "I forgot my wallet at home.",
    "My brother is coming to visit on Friday.",
    "How was your day?",
    "I have a meeting at three o'clock.",
    "The children are playing in the garden.",
    "I am looking for a present for my mother.",
    "Please send me an email with the details.",
    "I will be there in ten minutes.",
    "Our neighbours have a new puppy.",
    "I read a good book on holiday.",
    "Is it far from the station?",
    "I would like to make a complaint.",
    "My phone battery is almost empty.",
    "We are moving to a new house next month.",
    "I do not understand the question.",
    "Can I speak to someone in charge?",
    "The film starts at eight in the evening.",
    "I usually walk to work.",
    "My friend recommended this place.",
    "What is the best way to get there?",
    "I am sorry I am late.",
    "That sounds like a great idea.",
    "I have never been here before.",
    "Thank you so much, that is very kind.",
]

# (espeak voice, words per minute): the bench itself is en-us at 160.
DEV_VOICES = (("en-us", 150), ("en", 170), ("en-us+m3", 175))
