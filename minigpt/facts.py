"""The facts of the instruction world, written by hand: a trilingual lexicon, number words and the shop's
policy sheet. The pretraining corpus states them; the tasks ask about them; the gold judge checks against
them. Plain data, no torch.
"""

from dataclasses import dataclass

# The lexicon: english | chinese | french | category. Written by hand. No entry whose English and French
# are the same word (six, orange, table, train, ...): "wrong language" must be visible in the answer.
# French greetings are capitalised, as in the seed example "翻译成法语：你好" -> "Bonjour".
LEXICON_TABLE = """
hello          | 你好     | Bonjour          | greeting
goodbye        | 再见     | Au revoir        | greeting
thank you      | 谢谢     | Merci            | greeting
good evening   | 晚上好   | Bonsoir          | greeting
good night     | 晚安     | Bonne nuit       | greeting
please         | 请       | S'il vous plaît  | greeting
sorry          | 对不起   | Désolé           | greeting
welcome        | 欢迎     | Bienvenue        | greeting
hi             | 嗨       | Salut            | greeting
yes            | 是的     | oui              | greeting
no             | 不是     | non              | greeting
zero           | 零       | zéro             | number
one            | 一       | un               | number
two            | 二       | deux             | number
three          | 三       | trois            | number
four           | 四       | quatre           | number
five           | 五       | cinq             | number
seven          | 七       | sept             | number
eight          | 八       | huit             | number
nine           | 九       | neuf             | number
ten            | 十       | dix              | number
eleven         | 十一     | onze             | number
twelve         | 十二     | douze            | number
thirteen       | 十三     | treize           | number
fourteen       | 十四     | quatorze         | number
fifteen        | 十五     | quinze           | number
sixteen        | 十六     | seize            | number
seventeen      | 十七     | dix-sept         | number
eighteen       | 十八     | dix-huit         | number
nineteen       | 十九     | dix-neuf         | number
twenty         | 二十     | vingt            | number
hundred        | 一百     | cent             | number
red            | 红色     | rouge            | colour
blue           | 蓝色     | bleu             | colour
green          | 绿色     | vert             | colour
yellow         | 黄色     | jaune            | colour
black          | 黑色     | noir             | colour
white          | 白色     | blanc            | colour
pink           | 粉色     | rose             | colour
grey           | 灰色     | gris             | colour
brown          | 棕色     | marron           | colour
purple         | 紫色     | violet           | colour
Monday         | 星期一   | lundi            | day
Tuesday        | 星期二   | mardi            | day
Wednesday      | 星期三   | mercredi         | day
Thursday       | 星期四   | jeudi            | day
Friday         | 星期五   | vendredi         | day
Saturday       | 星期六   | samedi           | day
Sunday         | 星期日   | dimanche         | day
cat            | 猫       | chat             | animal
dog            | 狗       | chien            | animal
horse          | 马       | cheval           | animal
cow            | 奶牛     | vache            | animal
bird           | 鸟       | oiseau           | animal
fish           | 鱼       | poisson          | animal
mouse          | 老鼠     | souris           | animal
rabbit         | 兔子     | lapin            | animal
sheep          | 绵羊     | mouton           | animal
pig            | 猪       | cochon           | animal
duck           | 鸭子     | canard           | animal
tiger          | 老虎     | tigre            | animal
bear           | 熊       | ours             | animal
wolf           | 狼       | loup             | animal
fox            | 狐狸     | renard           | animal
frog           | 青蛙     | grenouille       | animal
bee            | 蜜蜂     | abeille          | animal
snake          | 蛇       | serpent          | animal
bread          | 面包     | pain             | food
water          | 水       | eau              | food
milk           | 牛奶     | lait             | food
cheese         | 奶酪     | fromage          | food
apple          | 苹果     | pomme            | food
egg            | 鸡蛋     | œuf              | food
meat           | 肉       | viande           | food
rice           | 米饭     | riz              | food
coffee         | 咖啡     | café             | food
tea            | 茶       | thé              | food
sugar          | 糖       | sucre            | food
salt           | 盐       | sel              | food
butter         | 黄油     | beurre           | food
wine           | 葡萄酒   | vin              | food
beer           | 啤酒     | bière            | food
cake           | 蛋糕     | gâteau           | food
soup           | 汤       | soupe            | food
banana         | 香蕉     | banane           | food
head           | 头       | tête             | body
hand           | 手       | main             | body
foot           | 脚       | pied             | body
eye            | 眼睛     | œil              | body
mouth          | 嘴       | bouche           | body
nose           | 鼻子     | nez              | body
ear            | 耳朵     | oreille          | body
arm            | 手臂     | bras             | body
leg            | 腿       | jambe            | body
heart          | 心       | cœur             | body
tooth          | 牙齿     | dent             | body
hair           | 头发     | cheveux          | body
house          | 房子     | maison           | home
door           | 门       | porte            | home
window         | 窗户     | fenêtre          | home
chair          | 椅子     | chaise           | home
bed            | 床       | lit              | home
kitchen        | 厨房     | cuisine          | home
bedroom        | 卧室     | chambre          | home
key            | 钥匙     | clé              | home
book           | 书       | livre            | home
pen            | 钢笔     | stylo            | home
paper          | 纸       | papier           | home
lamp           | 灯       | lampe            | home
clock          | 钟       | horloge          | home
cup            | 杯子     | tasse            | home
plate          | 盘子     | assiette         | home
knife          | 刀       | couteau          | home
sun            | 太阳     | soleil           | nature
moon           | 月亮     | lune             | nature
star           | 星星     | étoile           | nature
sky            | 天空     | ciel             | nature
sea            | 大海     | mer              | nature
river          | 河       | rivière          | nature
mountain       | 山       | montagne         | nature
tree           | 树       | arbre            | nature
flower         | 花       | fleur            | nature
rain           | 雨       | pluie            | nature
snow           | 雪       | neige            | nature
wind           | 风       | vent             | nature
fire           | 火       | feu              | nature
forest         | 森林     | forêt            | nature
city           | 城市     | ville            | place
street         | 街道     | rue              | place
school         | 学校     | école            | place
car            | 汽车     | voiture          | place
boat           | 船       | bateau           | place
plane          | 飞机     | avion            | place
bicycle        | 自行车   | vélo             | place
shop           | 商店     | magasin          | place
bank           | 银行     | banque           | place
hospital       | 医院     | hôpital          | place
church         | 教堂     | église           | place
station        | 火车站   | gare             | place
friend         | 朋友     | ami              | person
man            | 男人     | homme            | person
woman          | 女人     | femme            | person
child          | 孩子     | enfant           | person
boy            | 男孩     | garçon           | person
girl           | 女孩     | fille            | person
mother         | 妈妈     | mère             | person
father         | 爸爸     | père             | person
brother        | 兄弟     | frère            | person
sister         | 姐妹     | sœur             | person
son            | 儿子     | fils             | person
grandmother    | 奶奶     | grand-mère       | person
grandfather    | 爷爷     | grand-père       | person
big            | 大       | grand            | adjective
small          | 小       | petit            | adjective
hot            | 热       | chaud            | adjective
cold           | 冷       | froid            | adjective
good           | 好       | bon              | adjective
bad            | 坏       | mauvais          | adjective
new            | 新       | nouveau          | adjective
old            | 老       | vieux            | adjective
happy          | 快乐     | heureux          | adjective
sad            | 伤心     | triste           | adjective
beautiful      | 美丽     | beau             | adjective
fast           | 快       | rapide           | adjective
slow           | 慢       | lent             | adjective
short          | 短       | court            | adjective
easy           | 容易     | facile           | adjective
difficult      | 难       | difficile        | adjective
"""


@dataclass(frozen=True)
class Entry:
    en: str
    zh: str
    fr: str
    cat: str


LEXICON = [Entry(*[c.strip() for c in line.split("|")]) for line in LEXICON_TABLE.strip().splitlines()]

# number words 0..20, used for "answer as a word" (format) and "answer in another language" (wrong_language)
NUMBER_WORDS = {
    "en": ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split(),
    "zh": ("零 一 二 三 四 五 六 七 八 九 十 十一 十二 十三 十四 十五 "
           "十六 十七 十八 十九 二十").split(),
    "fr": ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
           "dix-sept dix-huit dix-neuf vingt").split(),
}

# ---------------------------------------------------------------------------------------------------------
# The shop's policy sheet (the customer-service desk answers from this and nothing else)
DAYS_ZH = {"Monday": "星期一", "Tuesday": "星期二", "Wednesday": "星期三", "Thursday": "星期四",
           "Friday": "星期五", "Saturday": "星期六", "Sunday": "星期日"}
OPENING_HOURS = {"Monday": ("9am", "6pm"), "Tuesday": ("9am", "6pm"), "Wednesday": ("9am", "6pm"),
                 "Thursday": ("9am", "8pm"), "Friday": ("9am", "8pm"), "Saturday": ("10am", "5pm"),
                 "Sunday": ("closed", "closed")}
PRODUCTS = [  # (english, chinese, price)
    ("umbrella", "雨伞", "$12"), ("teapot", "茶壶", "$25"), ("backpack", "背包", "$40"),
    ("notebook", "笔记本", "$3"), ("desk lamp", "台灯", "$18"), ("scarf", "围巾", "$15"),
    ("mug", "马克杯", "$8"), ("candle", "蜡烛", "$4"), ("towel", "毛巾", "$9"),
    ("blanket", "毯子", "$30"), ("pillow", "枕头", "$14"), ("kettle", "水壶", "$22"),
]
RETURN_DAYS, DELIVERY_FEE, FREE_DELIVERY_OVER, GIFT_WRAP = "30", "$5", "$50", "$2"
